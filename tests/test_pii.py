"""PII detection and redaction (modelyard.privacy): validators, recognizers, redaction modes, the `redact` CLI,
`data.clean.pii` in the data stage, and the prediction log's masking."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from modelyard.cli import app
from modelyard.config import DataConfig
from modelyard.data import prepare_data
from modelyard.privacy import PiiEngine, checks, get_engine, hash_token
from modelyard.serving.predlog import mask_pii

runner = CliRunner()


def _id_with_check(first17: str) -> str:
    """A resident ID with its GB 11643 check character, computed here independently of modelyard."""
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights, strict=True)) % 11]


def _luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        digits = [int(c) for c in prefix + d][::-1]
        if sum(x if i % 2 == 0 else (x * 2 - 9 if x > 4 else x * 2) for i, x in enumerate(digits)) % 10 == 0:
            return prefix + d
    raise AssertionError


VALID_ID = _id_with_check("44030519880612331")
CARD = _luhn_complete("622202123456789012")  # 19-digit UnionPay


@pytest.fixture(scope="module")
def engine() -> PiiEngine:
    return get_engine("auto")


def _types(engine: PiiEngine, text: str) -> list[tuple[str, str]]:
    return [(e.type, e.text) for e in engine.find(text)]


# ---------------------------------------------------------------- validators and recognizers


def test_resident_id_needs_its_check_digit_and_a_real_birth_date(engine: PiiEngine) -> None:
    wrong = VALID_ID[:-1] + ("0" if VALID_ID[-1] != "0" else "1")
    assert checks.valid_cn_id(VALID_ID) and not checks.valid_cn_id(wrong)
    assert checks.valid_cn_id("11010519491231002X") and checks.valid_cn_id("11010519491231002x")
    assert not checks.valid_cn_id(_id_with_check("11010519490231002"))  # 31 February
    assert not checks.valid_cn_id(_id_with_check("99010519491231002"))  # no province 99
    assert _types(engine, f"身份证号{VALID_ID}，请核对") == [("CN_ID", VALID_ID)]
    assert _types(engine, f"身份证号{wrong}，请核对") == []


def test_bank_cards_pass_luhn_grouped_or_not(engine: PiiEngine) -> None:
    broken = CARD[:-1] + str((int(CARD[-1]) + 1) % 10)
    assert checks.luhn_ok("4111111111111111") and not checks.luhn_ok("4111111111111112")
    grouped = " ".join(CARD[i : i + 4] for i in range(0, len(CARD), 4))
    for shown in (CARD, grouped, grouped.replace(" ", "-")):
        assert _types(engine, f"退款到银行卡{shown}谢谢") == [("BANK_CARD", shown)], shown
    assert _types(engine, f"退款到银行卡{broken}谢谢") == []
    # a card-valid number after an order cue is an order number, not a card
    assert _types(engine, f"订单号 {CARD} 已发货") == []


@pytest.mark.parametrize(
    "phone",
    ["13800138000", "138 0013 8000", "138-0013-8000", "+86 138 0013 8000", "0086-13900139000", "+8613900139000",
     "010-62345678", "(021)62345678", "（0571）8765 4321", "0755-8888 6666", "+86 10 62345678"],
)  # fmt: skip
def test_mainland_phones(engine: PiiEngine, phone: str) -> None:
    assert _types(engine, f"联系电话：{phone}，谢谢") == [("PHONE", phone)]


@pytest.mark.parametrize(
    "phone", ["(555) 123-4567", "415-555-2671", "+1 415 555 2671", "+44 20 7946 0958", "020 7946 0958", "07700 900123"]
)
def test_english_phone_formats(engine: PiiEngine, phone: str) -> None:
    assert _types(engine, f"Please call me on {phone} tomorrow.") == [("PHONE", phone)]


def test_phone_validation_rejects_lookalikes() -> None:
    assert checks.valid_cn_mobile("13800138000") and not checks.valid_cn_mobile("12800138000")  # no 12x segment
    assert not checks.valid_cn_mobile("15400138000")  # 154 is not allocated
    assert checks.valid_cn_landline("010-62345678") and not checks.valid_cn_landline("010-02345678")


def test_email_ip_url_credentials_and_passports(engine: PiiEngine) -> None:
    assert _types(engine, "邮箱zhang.wei@163.com，谢谢") == [("EMAIL", "zhang.wei@163.com")]
    assert _types(engine, "server 192.168.1.10 is down") == [("IP", "192.168.1.10")]
    assert _types(engine, "bad address 192.168.1.300 here") == []  # an octet above 255
    assert _types(engine, "login from 2001:db8::8a2e:370:7334 today") == [("IP", "2001:db8::8a2e:370:7334")]
    assert _types(engine, "at 12:30:45 sharp") == []  # a clock time is not IPv6
    url = "postgres://admin:S3cret!@db.example.com:5432/prod"
    assert _types(engine, f"leaked {url} in the log") == [("URL_CREDENTIALS", url)]
    assert _types(engine, "see https://example.com/docs for details") == []  # no credentials
    assert _types(engine, "护照号E12345678，签证页") == [("PASSPORT", "E12345678")]
    assert _types(engine, "my passport number is 503123456.") == [("PASSPORT", "503123456")]
    assert _types(engine, "the reference 503123456 is fine") == []  # other passports need the word


def test_addresses_and_names_in_both_languages(engine: PiiEngine) -> None:
    text = "请寄到北京市朝阳区建国路88号SOHO现代城5号楼1203室，收件人张伟"
    assert _types(engine, text) == [("ADDRESS", "北京市朝阳区建国路88号SOHO现代城5号楼1203室"), ("PERSON", "张伟")]
    assert _types(engine, "地址：上海市浦东新区张江路123弄4号") == [("ADDRESS", "上海市浦东新区张江路123弄4号")]
    assert _types(engine, "骑手李建国态度很好") == [("PERSON", "李建国")]
    assert _types(engine, "客服欧阳娜娜回复很快") == [("PERSON", "欧阳娜娜")]
    assert _types(engine, "王先生您好，您的订单已发货") == [("PERSON", "王")]
    assert _types(engine, "The driver, John Smith, was late.") == [("PERSON", "John Smith")]
    assert _types(engine, "I spoke with Dr. Emily Watson yesterday.") == [("PERSON", "Emily Watson")]
    assert _types(engine, "北京的天气不错，我在超市买了东西") == []  # a city alone is not an address
    # a name with a number-like given name (张三, 李四) still counts after a cue
    assert _types(engine, "联系人：张三，电话请留言") == [("PERSON", "张三")]
    assert _types(engine, "收件人李四") == [("PERSON", "李四")]


def test_lookalikes_are_left_alone(engine: PiiEngine) -> None:
    decoys = [
        "这款手机才¥199.00，2024年3月15日下单，买了3件",
        "Paid $1,299 on 2024-03-15 at 14:30:00 for the iPhone 15 Pro Max",
        "Version v2.3.1 and build 10.0.19045.3803 fixed the RTX 4090 driver crash",
        "ISBN 978-7-111-54742-6, model SM-G9980, order #2024031512345678",
        "订单号20240315123456789，快递单号SF1234567890123，坐G1234回家",
        "May was great; Apple Pay and Amazon Prime failed at checkout.",
    ]
    for text in decoys:
        assert _types(engine, text) == [], text


def test_mixed_language_sentence(engine: PiiEngine) -> None:
    text = "客服Tom说会联系我，我的手机+86 139 1234 5678，email tom.li@example.com"
    assert _types(engine, text) == [
        ("PERSON", "Tom"),
        ("PHONE", "+86 139 1234 5678"),
        ("EMAIL", "tom.li@example.com"),
    ]
    # each language alone keeps only its own recognizers (and the shared ones: e-mail, +CC phones, cards …)
    assert _types(get_engine("en"), text) == _types(engine, text)
    assert _types(get_engine("en"), "手机13912345678") == [] and _types(get_engine("zh"), "手机13912345678") != []
    assert _types(get_engine("zh"), "call (555) 123-4567") == []


def test_full_width_digits_are_read(engine: PiiEngine) -> None:
    assert _types(engine, "手机号码是１３８０１３８６６９９") == [("PHONE", "１３８０１３８６６９９")]


# ---------------------------------------------------------------- redaction modes


def test_mask_replace_and_hash_modes(engine: PiiEngine) -> None:
    text = f"电话13800138000，身份证{VALID_ID}"
    assert engine.redact(text) == "电话<PHONE>，身份证<CN_ID>"
    fake = engine.redact(text, "replace", salt="s")
    assert "13800138000" not in fake and VALID_ID not in fake
    assert [e.type for e in engine.find(fake)] == ["PHONE", "CN_ID"]  # same types, format-valid stand-ins
    assert fake == engine.redact(text, "replace", salt="s")

    one = engine.redact(text, "hash", salt="pepper")
    assert one.startswith("电话<PHONE:") and one == engine.redact(text, "hash", salt="pepper")
    assert one != engine.redact(text, "hash", salt="other")
    # the same number written differently is the same token
    assert hash_token("PHONE", "138 0013 8000", "pepper") == hash_token("PHONE", "13800138000", "pepper")
    with pytest.raises(Exception, match="salt"):
        engine.redact(text, "hash")


def test_prediction_log_masks_with_the_engine() -> None:
    assert mask_pii("call 13800138000 or mail a@b.io") == "call <PHONE> or mail <EMAIL>"
    assert mask_pii("a good film from 2019, 10/10") == "a good film from 2019, 10/10"


# ---------------------------------------------------------------- the redact command


def _invoke(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, ["redact", *map(str, args)], catch_exceptions=False, env=env)


def test_redact_cli_round_trip_keeps_columns_and_order(tmp_path: Path) -> None:
    rows = [
        {"id": "3", "text": "电话13800138000，收件人张伟", "label": "neg", "note": "NA"},
        {"id": "1", "text": "a lovely film", "label": "pos", "note": ""},
        {"id": "2", "text": "mail me at bob@example.com or bob@example.org", "label": "pos", "note": "x,y"},
    ]
    src = tmp_path / "in.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    result = _invoke("--input", src, "--output", out)
    assert result.exit_code == 0, result.stderr
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(got.columns) == ["id", "text", "label", "note"]
    assert got["id"].tolist() == ["3", "1", "2"] and got["note"].tolist() == ["NA", "", "x,y"]
    assert got["label"].tolist() == ["neg", "pos", "pos"]
    assert got["text"].tolist() == ["电话<PHONE>，收件人<PERSON>", "a lovely film", "mail me at <EMAIL> or <EMAIL>"]
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text(encoding="utf-8"))
    assert summary["counts"] == {"EMAIL": 2, "PERSON": 1, "PHONE": 1}
    assert summary["rows"] == 3 and summary["rows_touched"] == 2 and summary["entities"] == 4

    # hash mode: the salt comes from the environment, never from the command line or the summary
    hashed = tmp_path / "hashed.jsonl"
    pd.DataFrame(rows).to_json(tmp_path / "in.jsonl", orient="records", lines=True, force_ascii=False)
    result = _invoke("-i", tmp_path / "in.jsonl", "-o", hashed, "--mode", "hash", "--salt-env", "PII_SALT",
                     env={"PII_SALT": "pepper"})  # fmt: skip
    assert result.exit_code == 0, result.stderr
    texts = [json.loads(line)["text"] for line in hashed.read_text(encoding="utf-8").splitlines()]
    assert texts[0].startswith("电话<PHONE:") and "pepper" not in (tmp_path / "hashed.jsonl.summary.json").read_text()


def _failure(result) -> str:  # noqa: ANN001 - click's Result
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = " ".join(result.stderr.split())
    assert err.startswith("error:") and "Traceback" not in result.stderr, result.stderr
    return err


def test_redact_cli_errors_are_one_line(tmp_path: Path) -> None:
    src = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["电话13800138000"], "stars": ["5"]}).to_csv(src, index=False)
    err = _failure(_invoke("--input", src, "--output", tmp_path / "o.csv", "--column", "text"))
    assert "reviews.csv: no column 'text' (columns found: review, stars)" in err and "--column" in err

    empty = tmp_path / "empty.csv"
    empty.write_text("text\n", encoding="utf-8")
    assert "empty.csv: the file is empty" in _failure(_invoke("--input", empty, "--output", tmp_path / "o.csv"))

    garbage = tmp_path / "latin.csv"
    garbage.write_bytes(b"text\ncaf\xe9 \xff\xfe\x80 na\xefve\n")
    err = _failure(_invoke("--input", garbage, "--output", tmp_path / "o.csv"))
    assert "latin.csv: not valid UTF-8 at byte" in err and "--encoding" in err and "data.encoding" not in err
    assert not (tmp_path / "o.csv").exists()

    # a GB18030 file (Excel on Chinese Windows) is decoded, said so, and written back as UTF-8
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("text,id\n收件人张伟，电话13800138000，谢谢\n".encode("gb18030"))
    result = _invoke("--input", gbk, "--output", tmp_path / "gbk_out.csv")
    assert result.exit_code == 0 and "gb18030" in result.stderr
    assert "<PHONE>" in (tmp_path / "gbk_out.csv").read_text(encoding="utf-8")

    err = _failure(_invoke("--input", src, "--output", tmp_path / "o.csv", "--column", "review", "--mode", "hash"))
    assert "--salt-env" in err


# ---------------------------------------------------------------- data.clean.pii


def _tiny_data(tmp_path: Path) -> Path:
    rows = []
    for i in range(12):
        rows.append({"text": f"good product number {i}, would buy again", "label": "pos"})
        rows.append({"text": f"bad product number {i}, broke in a week", "label": "neg"})
    rows[0]["text"] = "good, call me on 13800138000 for the photos"
    rows[1]["text"] = "bad, my card 4111 1111 1111 1111 was charged twice, mail bob@example.com"
    rows[2]["text"] = "good, ask for Sarah Connor at the desk"
    path = tmp_path / "tiny.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("mode", ["redact", "drop", "report"])
def test_data_clean_pii_counts_in_the_data_report(tmp_path: Path, mode: str) -> None:
    path = _tiny_data(tmp_path)
    cfg = DataConfig(path=str(path), clean={"pii": mode}, valid_size=0.2, test_size=0.2)
    data = prepare_data(cfg, tmp_path)
    report = json.loads(json.dumps(data.report))  # what data_report.json holds
    pii = report["pii"]
    assert pii["counts"] == {"BANK_CARD": 1, "EMAIL": 1, "PERSON": 1, "PHONE": 1}
    assert pii["texts_with_pii"] == 3 and pii["texts"] == 24 and pii["mode"] == mode
    texts = pd.concat([data.train, data.valid, data.test])["text"].tolist()
    if mode == "redact":
        assert pii["texts_changed"] == 3 and report["rows_out"] == 24
        assert "good, call me on <PHONE> for the photos" in texts
        assert not any("13800138000" in t or "Sarah" in t for t in texts)
    elif mode == "drop":
        assert pii["rows_dropped"] == 3 and report["dropped"]["pii"] == 3 and report["rows_out"] == 21
        assert not any("13800138000" in t or "<PHONE>" in t for t in texts)
    else:
        assert report["rows_out"] == 24 and any("13800138000" in t for t in texts)


def test_data_clean_pii_is_off_by_default(tmp_path: Path) -> None:
    data = prepare_data(DataConfig(path=str(_tiny_data(tmp_path)), valid_size=0.2, test_size=0.2), tmp_path)
    assert "pii" not in data.report and data.report["dropped"]["pii"] == 0
