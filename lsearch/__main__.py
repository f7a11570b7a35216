from lsearch.cli import main

main()
