"""``rlix-plugin dashboard``: a live page of the pool, served on localhost.

One page (:mod:`.static`: HTML, CSS and JavaScript shipped in the package, no CDN) that polls
``/api/state`` every half second and draws the GPU grid (one cell per GPU, coloured by holder and
state), the open demand and the pending queue, the last decisions with their reasons, and a
scrolling ownership timeline. :mod:`.view` computes what the page shows from the scheduler's
snapshot and decision log (pure); :mod:`.server` serves it, polling a source (:mod:`.sources`:
a Ray cluster's scheduler, or a local scheduler in this process).
"""
