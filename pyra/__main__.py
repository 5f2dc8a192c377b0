from pyra.cli import main

raise SystemExit(main())
