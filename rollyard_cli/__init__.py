"""`rollyard`: the command line over the REST API (`rollyard runs ...`) and the demo."""
