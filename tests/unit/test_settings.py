from __future__ import annotations

import pytest
from flywheel.errors import ConfigError
from flywheel.kafka_config import client_config
from flywheel.settings import Settings


def test_defaults_point_at_the_embedded_setup(tmp_path):
    s = Settings.from_env({"FLYWHEEL_HOME": str(tmp_path)})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.store_url == (tmp_path / ".local" / "store").as_uri()
    assert s.specs_dir == tmp_path / "include" / "specs"


def test_kafka_security_passes_through_to_every_client(tmp_path):
    env = {
        "FLYWHEEL_HOME": str(tmp_path),
        "FLYWHEEL_KAFKA_BOOTSTRAP": "kafka-1:9093,kafka-2:9093",
        "FLYWHEEL_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "FLYWHEEL_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "FLYWHEEL_KAFKA_CONFIG_JSON": '{"sasl.username": "svc", "sasl.password": "s3cret"}',
    }
    s = Settings.from_env(env)
    for role in ("consumer", "producer", "admin"):
        c = client_config(s, role)
        assert c["bootstrap.servers"] == "kafka-1:9093,kafka-2:9093"
        assert c["security.protocol"] == "SASL_SSL" and c["sasl.mechanism"] == "SCRAM-SHA-512"
        assert c["sasl.username"] == "svc"
    assert "s3cret" not in str(s.describe())


def test_consumer_never_auto_commits_and_producer_is_idempotent(tmp_path):
    s = Settings.from_env({"FLYWHEEL_HOME": str(tmp_path)})
    assert client_config(s, "consumer")["enable.auto.commit"] is False
    assert client_config(s, "producer")["enable.idempotence"] is True
    assert client_config(s, "consumer", group_id="g")["group.id"] == "g"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLYWHEEL_KAFKA_CONFIG_JSON": "{nope"}, "FLYWHEEL_KAFKA_CONFIG_JSON is not valid JSON"),
        ({"FLYWHEEL_KAFKA_CONFIG_JSON": "[1]"}, "must be a JSON object"),
        ({"FLYWHEEL_BROKER_TIMEOUT_S": "soon"}, "FLYWHEEL_BROKER_TIMEOUT_S must be a number"),
        ({"FLYWHEEL_PARQUET_COMPRESSION": "lzma"}, "FLYWHEEL_PARQUET_COMPRESSION must be one of lz4, zstd"),
    ],
)
def test_bad_settings_say_which_variable(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"FLYWHEEL_HOME": str(tmp_path), **env})


@pytest.mark.parametrize("codec", ["lz4", "ZSTD", "none"])
def test_parquet_codec_is_a_setting_and_files_read_back(tmp_path, codec):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from flywheel.storage.parquet import table_bytes

    settings = Settings.from_env({"FLYWHEEL_HOME": str(tmp_path), "FLYWHEEL_PARQUET_COMPRESSION": codec})
    assert settings.parquet_compression == codec.lower()
    table = pa.table({"x": [1.5, None, 3.0], "k": ["a", "b", "a"]})
    data = table_bytes(table, compression=settings.parquet_compression)
    assert pq.read_table(pa.BufferReader(data)).equals(table)
    assert Settings.from_env({"FLYWHEEL_HOME": str(tmp_path)}).parquet_compression == "lz4"
