"""The core is torch-only: importing it must never import Dash."""

import subprocess
import sys

CODE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'dash' or name.startswith('dash.') or name.startswith('dash_'):
            raise ImportError('dash is blocked in this test')
sys.meta_path.insert(0, Block())
import viewer, viewer.core, viewer.core.export, viewer.core.prune, viewer.cli
lm = viewer.load_model('demo:cnn')
g = viewer.build_graph(lm.model, lm.inputs)
viewer.cli.build_parser().parse_args(['serve', '--model', 'demo:cnn'])  # serve options too
assert not any(m.startswith('dash') for m in sys.modules), [m for m in sys.modules if 'dash' in m]
print('ok', len(g.nodes))
"""


def test_core_imports_without_dash():
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")
