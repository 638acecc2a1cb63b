"""``python -m finetune``: see :mod:`finetune.cli`."""

import sys

from finetune.cli import main

sys.exit(main())
