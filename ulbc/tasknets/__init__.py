"""Vision models run on decoded images (machine-task metrics, task-aware encoding, the adapter).

Their weights come from ulbc's weights manager only (``ulbc weights list``); nothing here downloads.
"""
