from otsort._cli import main
import sys
sys.exit(main())
