from vent_bake.cli import main

main()
