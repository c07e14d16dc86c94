"""Runtime: what a running job shares with the stages above it: the run directory (`runs.py`:
config, folds, fold models, predictions, the `cxrlt runs` listing) and the tf.distribute layout
(`distribute.py`: strategies, replicas, workers and their agreement helpers).

Training writes runs, prediction and ensembling read them, and all three place work on replicas: so
these live below train, predict and ensemble, which may each import them."""
