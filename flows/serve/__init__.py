"""The line's service: registered models answering over HTTP on Ray Serve (``mrkd serve``; docs/serving.md).

- ``flows.serve.command``  the ``mrkd serve`` command (an ``mrkd.commands`` entry point)
- ``flows.serve.app``      the Serve application: the gateway and one scorer per model; ``build`` for a RayService
- ``flows.serve.models``   what is served: names, versions from the registry, the Predictor per version
- ``flows.serve.options``  the settings record; ``flows.serve.settings`` checks what a user gave
- ``flows.serve.web``      HTTP: the token, body limits, images out of a request, errors as JSON
- ``flows.serve.cluster``  which Ray and Serve it runs on, and leaving them clean

The predictions are ``mrkd_core.inference.Predictor``'s, the record ``mrkd_core.inspections``'s:
this package adds only the service around them.
"""
