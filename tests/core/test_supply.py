"""PipelineEngines: the supply-side base answers its own pipeline only."""

from __future__ import annotations

from rlix_plugin.supply import PipelineEngines


class Engines(PipelineEngines):
    def __init__(self, pipeline_id):
        self.pipeline_id = pipeline_id
        self.awake = set()

    def resize(self, remove=(), add=()):
        self.awake = (self.awake - set(remove)) | set(add)
        return tuple(sorted(self.awake))


def test_each_pipeline_reaches_its_own_engines(rlix_hooks, rlix_register):
    first, second = Engines("a"), Engines("b")
    rlix_register(first)
    rlix_register(second)
    assert rlix_hooks.resize_infer(pipeline_id="a", dp_ranks_to_add=(0, 2)) == (0, 2)
    assert rlix_hooks.resize_infer(pipeline_id="b", dp_ranks_to_add=(1,)) == (1,)
    assert rlix_hooks.resize_infer(pipeline_id="a", dp_ranks_to_remove=(0,)) == (2,)
    assert (first.awake, second.awake) == ({2}, {1})
    assert rlix_hooks.resize_infer(pipeline_id="c", dp_ranks_to_add=(0,)) is None, "nobody owns c"
