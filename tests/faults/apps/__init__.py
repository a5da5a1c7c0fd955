"""Small apps the fault-injection worker processes import (``tests.faults.apps.<name>:app``)."""
