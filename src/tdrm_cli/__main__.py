from tdrm_cli.cli import main

main()
