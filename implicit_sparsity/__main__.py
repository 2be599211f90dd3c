from implicit_sparsity.cli import main

raise SystemExit(main())
