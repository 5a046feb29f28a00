"""Commands of the training and evaluation side, each module a few typer command functions
that `mtpano.cli` registers on the app."""
