from asft.cli import main

main()
