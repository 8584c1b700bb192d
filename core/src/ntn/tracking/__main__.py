from ntn.tracking.cli import main

raise SystemExit(main())
