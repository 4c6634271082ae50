"""Tests of the FastAPI sidecar (creditsync_api), through TestClient and real uvicorn."""
