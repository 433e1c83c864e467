"""flywheel: Airflow-orchestrated real-time machine learning on Apache Kafka.

The package is Airflow-free at import time: DAGs, plugins, the scorer and the CLI all import it, and
only the modules that talk to Airflow (``flywheel.airflow``) import Airflow, lazily.
"""

__version__ = "0.1.0"
