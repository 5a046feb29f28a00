from mtpano.cli import app

app()
