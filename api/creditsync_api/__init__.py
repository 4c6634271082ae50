"""creditsync's FastAPI sidecar: billing webhooks in, credits and admin views out.

`main.create_app(settings)` builds the app; routes stay thin and call `creditsync` services.
"""
