from runner.cli.app import command

command()
