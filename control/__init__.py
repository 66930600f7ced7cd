"""hushgate control plane: the domain core (``control.core``), the CLI and the web app."""
