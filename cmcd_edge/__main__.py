from cmcd_edge.cli import main

main()
