"""The br-int pipeline as pure code: desired state in, flows and groups out. No I/O."""
