"""One router per resource; `creditsync_api.main` includes them all."""
