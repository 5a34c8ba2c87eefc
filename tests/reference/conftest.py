"""The reference framework trains a small torch policy: without torch (an install without the
``demo`` extra) these tests skip with that reason instead of failing at collection."""

import pytest

pytest.importorskip("torch", reason="the reference framework needs torch (pip install 'rlix-plugin[demo]')")
