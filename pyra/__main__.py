from pyra.cli.main import main

raise SystemExit(main())
