from dealrisk.cli import app

app()
