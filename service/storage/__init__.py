"""Object storage for uploads and artifacts (S3 or a local directory), and safe URI fetching."""

from service.storage.backends import LocalStorage, S3Storage, Storage, blob_key, make_storage, put_blob

__all__ = ["LocalStorage", "S3Storage", "Storage", "blob_key", "make_storage", "put_blob"]
