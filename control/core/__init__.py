"""The domain core: models and services. Imports neither Flask nor mitmproxy."""
