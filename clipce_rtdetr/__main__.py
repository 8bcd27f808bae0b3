from clipce_rtdetr.cli import main

main()
