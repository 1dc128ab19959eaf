"""Command-line front end of NP-Edit (`python -m train_cli --help`)."""
