import subprocess
import sys

import pytest


def test_family_exports_resolve_on_first_use_without_importing_torch_first():
    code = (
        "import sys\n"
        "import almostlinear.steering, almostlinear.erasure, almostlinear.merging, almostlinear.adapters\n"
        "assert 'torch' not in sys.modules, 'a family imported torch on import'\n"
        "from almostlinear.merging import Checkpoint, TaskVector\n"
        "from almostlinear.steering import SteeringVector\n"
        "assert 'torch' in sys.modules\n"
        "import almostlinear.merging as m\n"
        "assert 'Checkpoint' in dir(m) and 'Checkpoint' in m.__all__\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_name_is_an_attribute_error():
    import almostlinear.erasure as erasure

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        erasure.nothing_here  # noqa: B018
