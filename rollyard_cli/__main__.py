from rollyard_cli.app import main

main()
