"""The scheduler: a pure core (topology, state, planner, validation) and the async driver that
runs it (:mod:`.service`). Nothing here imports ray."""
