from rlhf.cli import app

app()
