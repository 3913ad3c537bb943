"""Python client for the direct path: bytes go from this machine straight to S3 through presigned URLs."""

from gateway.client.direct import DirectUploader, UploadResult
from gateway.client.errors import GatewayError, UploadFailed

__all__ = ["DirectUploader", "GatewayError", "UploadFailed", "UploadResult"]
