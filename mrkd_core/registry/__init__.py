"""The model registry: named models, numbered versions, a champion, promotions and history.

It lives in the artifact store next to the runs (no server): ``models/<name>/<dataset>/
<category>/`` holds each registered model's index and version records, ``tables/
promotions`` and ``tables/history`` the decisions and the history of every run
(docs/storage.md, "The model registry").

- :mod:`~mrkd_core.registry.records`: the layout, versions, aliases and the entry's claim;
- :mod:`~mrkd_core.registry.promotion`: the promotion rule (same test data, tolerance per
  metric), the champion re-evaluated on new test data, a person's promote/rollback;
- :mod:`~mrkd_core.registry.tracking`: what the engine calls after storing a result
  (:func:`track` with :class:`RegistryOptions`);
- :mod:`~mrkd_core.registry.tables`: the ``promotions`` and ``history`` Parquet tables;
- :mod:`~mrkd_core.registry.reference`: ``<store>/models/<name>/<dataset>/<category>@champion``
  → a ``model.pt`` URI (:func:`resolve_model_location`);
- :mod:`~mrkd_core.registry.commands`: ``mrkd models list|promote|rollback``.

Import from the submodules (this package imports nothing itself, so that ``mrkd --help``
stays fast).
"""
