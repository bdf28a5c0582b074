"""What the backends hold, read straight from the servers (not through flowstore)."""

from __future__ import annotations


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def gcs_blobs(endpoint: str, bucket: str) -> list[str]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_sdk

    sdk = gcs_sdk.Client(project="flowstore", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                         client_options={"api_endpoint": endpoint})
    return sorted(b.name for b in sdk.list_blobs(bucket))


def azure_blobs(connection_string: str, container: str) -> list[str]:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(connection_string)
    return sorted(b.name for b in service.get_container_client(container).list_blobs())
