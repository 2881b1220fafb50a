"""The FastAPI service: settings, schemas, the store, auth and the manager page."""
