"""explain: why a model predicts what it does. Saliency behind one call and its method registry
(``attribute``), DeepLIFT's twin for models that reuse activations and its fast zero-baseline path
(``deeplift``), a batch of predictions with maps and top cells (``batch``), overlays (``overlay``) and the
irrelevant-share metric (``metrics``). May import ``core``, captum and ``label_config``.
"""
