"""End to end with the real pipeline: HTTP gateway (uvicorn), Celery worker, Postgres,
Redis and S3 (moto). Upload a tiny zoo model and digits as an ImageFolder tar, run a job,
download the compressed checkpoint, reload it and check its test accuracy against the
job's report; and a checkpoint that does not fit its architecture fails as a user error."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pxp.client import PxpClient
from tests.conftest import RUN_ID, start_celery_worker, start_gateway

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.service, pytest.mark.slow]

ARCH = "digits_vgg"


@pytest.fixture(scope="module")
def e2e(prod_settings, tmp_path_factory):
    """A gateway and a worker running the real ``pxp.pipeline.run``, on their own queue."""
    settings = prod_settings.model_copy(
        update={
            "queue_name": f"pxp-test-{RUN_ID}-e2e",
            "heartbeat_stale_s": 120,
        }
    )
    logs = tmp_path_factory.mktemp("e2e-logs")
    worker = start_celery_worker(settings, logs / "worker.log", f"e2e-{RUN_ID}")
    gateway, url = start_gateway(settings, logs / "gateway.log")
    yield url, settings
    gateway.stop()
    worker.stop()


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """A tiny trained digits VGG as safetensors and the digits pool as an ImageFolder tar."""
    from PIL import Image

    from pxp.data import load_data
    from pxp.models import get_architecture, save_safetensors
    from pxp.spec import DataSpec
    from pxp.zoo import TINY_KWARGS, load_zoo_model

    root = tmp_path_factory.mktemp("e2e-inputs")
    kwargs = TINY_KWARGS[ARCH]
    model, _meta = load_zoo_model(ARCH, kwargs)
    weights = save_safetensors(model.state_dict(), root / "tiny.safetensors")
    info = get_architecture(ARCH)
    data = load_data(DataSpec(source="digits"), image_size=info.image_size, channels=info.input_channels)
    archive = root / "digits.tar"
    with tarfile.open(archive, "w") as tf:
        for i, (image, label) in enumerate(zip(data.images, data.labels.tolist(), strict=True)):
            buf = io.BytesIO()
            Image.fromarray(image[0].numpy()).save(buf, format="PNG")
            entry = tarfile.TarInfo(f"digits/{data.class_names[label]}/{i:04d}.png")
            entry.size = buf.tell()
            buf.seek(0)
            tf.addfile(entry, buf)
    return {"weights": Path(weights), "archive": archive, "kwargs": kwargs}


def _reloaded_test_accuracy(model_dir: Path, archive: Path, spec: dict) -> float:
    from pxp.data import load_data, make_splits
    from pxp.models import get_architecture
    from pxp.models.compressed import load_compressed
    from pxp.pruning.curve import accuracy
    from pxp.spec import DataSpec, SplitSpec

    info = get_architecture(ARCH)
    data = load_data(DataSpec(source=str(archive)), image_size=info.image_size, channels=info.input_channels)
    test = make_splits(data.labels, SplitSpec.model_validate(spec["splits"])).test
    model = load_compressed(model_dir)
    with torch.no_grad():
        return accuracy(model, data.normalized(test, info.mean, info.std), data.labels[test])


def test_compress_over_http_and_reload(e2e, uploads, tmp_path):
    url, settings = e2e
    from service.admin import create_key

    key = create_key(f"e2e-{RUN_ID}", settings=settings).key
    with PxpClient(url, key, timeout=60) as client:
        model = client.upload_model(uploads["weights"], ARCH, uploads["kwargs"])
        dataset = client.upload_dataset(uploads["archive"])
        assert dataset["class_names"] == [str(d) for d in range(10)]
        spec = {
            "criteria": [{"criterion": "lrp"}],
            "splits": {"reference_samples_per_class": 5, "seed": 3},
            "prune": {"rates": [0.0, 0.1, 0.2, 0.3], "rate": 0.2},
        }
        job = client.submit(spec, model_id=model["id"], dataset_id=dataset["id"], idempotency_key="e2e-1")
        final = client.wait(job["id"], timeout=900, poll_interval=0.5)
        assert final["status"] == "succeeded", final["error"]
        artifacts = client.artifacts(job["id"])
        assert all(len(a["sha256"]) == 64 for a in artifacts)
        paths = client.download_all(job["id"], tmp_path / "out")

    result = final["result"]
    assert (
        result["chosen_rate"] == 0.2
        and result["compression"]["params_after"] < result["compression"]["params_before"]
    )
    filenames = {p.name for p in paths.values()}
    assert {"model.safetensors", "manifest.json"} <= filenames
    measured = _reloaded_test_accuracy(tmp_path / "out", uploads["archive"], final["spec"])
    assert measured == pytest.approx(result["compression"]["test_accuracy"], abs=1e-9)
    assert final["metrics"]["test_accuracy"] == result["compression"]["test_accuracy"]
    assert measured > 0.5


def test_checkpoint_that_does_not_fit_the_architecture_fails_as_user_error(e2e, uploads):
    url, settings = e2e
    from service.admin import create_key

    key = create_key(f"e2e-bad-{RUN_ID}", settings=settings).key
    with PxpClient(url, key, timeout=60) as client:
        # The tiny weights, declared with a classifier width they do not have (kwargs that are
        # not given are read from the checkpoint; given ones must agree with it).
        model = client.upload_model(uploads["weights"], ARCH, {"hidden": 7})
        job = client.submit({"criteria": [{"criterion": "weight"}]}, model_id=model["id"])
        final = client.wait(job["id"], timeout=300, poll_interval=0.5)
        assert final["status"] == "failed"
        assert final["error"]["type"] == "InvalidModelError" and final["error"]["kind"] == "user"
        assert client.artifacts(job["id"]) == []
