"""Torch-free checks the gateway runs on uploads before anything is stored.

What is checked where:

* gateway (here, cheap, no torch): body size limits; checkpoint container format
  (safetensors header parsed and bounds-checked, torch zip checkpoints' pickle scanned
  for non-allow-listed globals, raw pickle refused); archive member names (absolute
  paths, ``..``, links and devices refused), member count and declared uncompressed size;
  ImageFolder layout and class count (at least two classes); architecture name against
  :data:`service.validation.architectures.KNOWN_ARCHITECTURES`.
* worker (pxp, with torch): the checkpoint actually loading into the architecture
  (names, shapes), images decoding, per-class sample counts. These fail the job with a
  user error ``{type: InvalidModelError | InvalidDataError, message}``.
"""
