from gpo.cli import main

main()
