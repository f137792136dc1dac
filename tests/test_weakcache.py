"""per_class: cached per class, and the class is not kept alive by the cache."""

import gc
import weakref

from viewer.core.verify import _branches_on_training
from viewer.core.weakcache import per_class


def test_computes_once_per_class():
    calls = []

    @per_class
    def name_of(cls):
        calls.append(cls)
        return cls.__name__

    class A:
        pass

    assert name_of(A) == name_of(A) == "A"
    assert calls == [A]


def test_does_not_keep_a_class_alive():
    # a user's model file imported again (each load_model) makes new classes; the cache of
    # "does this forward branch on self.training" must not hold the old ones
    namespace: dict = {}
    exec("import torch\n"
         "class Net(torch.nn.Module):\n"
         "    def forward(self, x):\n"
         "        return x if self.training else -x\n", namespace)
    cls = namespace.pop("Net")
    # inspect.getsource cannot read exec'd code: the answer is False, and cached
    assert _branches_on_training(cls) is False
    ref = weakref.ref(cls)
    del cls, namespace
    gc.collect()
    assert ref() is None
