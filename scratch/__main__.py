"""`python -m scratch` runs the command line, the same as the `scratch` script."""
from scratch.cli import main

raise SystemExit(main())
