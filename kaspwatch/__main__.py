from kaspwatch.cli import main

raise SystemExit(main())
