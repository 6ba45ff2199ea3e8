"""Build the labelled PII test sets: `python benchmarks/make_pii_eval.py` (seeded; the output is committed).

Writes
  benchmarks/data/pii_eval.jsonl              generated: English + Chinese review/support/chat sentences from
                                              templates filled with random valid values, plus look-alike decoys;
  benchmarks/data/pii_eval_handwritten.jsonl  converted from pii_eval_handwritten.txt (hand-written sentences,
                                              phrasing unlike these templates; markup [[TYPE:text]]).

Each line: {"text", "lang", "entities": [{"type", "start", "end"}], "decoy": bool}. A decoy sentence holds no PII,
only look-alikes (prices, dates, quantities, order and tracking numbers, versions, ISBNs, product models,
timestamps). The values are generated here with their own checksum code (GB 11643, Luhn), independent of
modelyard.privacy, so the benchmark does not grade the recognizers with their own validators.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data"
SEED = 16

# ---------------------------------------------------------------- values


def words(text: str) -> list[str]:
    return text.split()


ID_REGIONS = words(
    "110105 110108 310115 310104 440305 440106 330106 330110 510107 420111 320102 370202 610113 500103 120101 "
    "350203 430104 210102 530102 410105"
)
MOBILE_PREFIXES = words(
    "130 131 132 133 135 136 137 138 139 150 151 152 155 156 157 158 159 166 171 173 176 177 180 181 182 183 "
    "185 186 187 188 189 191 198 199 147"
)
AREA_CODES = words("010 021 022 023 020 024 025 027 028 029 0755 0571 0512 0731 0871 0351 0591 0532 0769 0898")
CN_SURNAMES = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦方白邹孟熊秦邱江尹薛段雷侯龙史陶黎贺顾毛郝龚邵万钱严"
)
CN_SURNAMES += ["欧阳", "司马", "上官", "诸葛"]
GIVEN_CHARS = list(
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建文辉力宇浩然晓燕子涵梓轩思雨佳怡欣妍嘉俊鹏志国海波晨阳雪梅婷琳颖倩斌"
)
EN_FIRST = words(
    "James Mary Robert Patricia Michael Jennifer David Linda William Elizabeth Richard Barbara Joseph Susan "
    "Thomas Jessica Charles Sarah Christopher Karen Daniel Nancy Matthew Lisa Anthony Betty Emily Andrew "
    "Ashley Joshua Olivia Ethan Sophia Liam Chloe Oliver Amelia Harry Isla George Freya Siobhan Niamh Rhys "
    "Priya Arjun Mei Hiroshi Fatima Omar Lucas Zoe"
)
EN_LAST = words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Wilson Anderson Taylor Thomas "
    "Moore Jackson Martin Lee Thompson White Harris Clark Lewis Walker Hall Allen Young King Wright Scott "
    "Evans O'Brien McCarthy Patel Sharma Nguyen Kim Tanaka Khan Murphy Kowalski"
)
EN_TITLES = ["Mr.", "Mrs.", "Ms.", "Dr.", "Mr", "Miss"]
PROVINCES = [
    ("北京市", None),
    ("上海市", None),
    ("天津市", None),
    ("重庆市", None),
    ("广东省", ["广州市", "深圳市", "东莞市", "佛山市"]),
    ("浙江省", ["杭州市", "宁波市", "温州市"]),
    ("江苏省", ["南京市", "苏州市", "无锡市"]),
    ("四川省", ["成都市", "绵阳市"]),
    ("湖北省", ["武汉市", "宜昌市"]),
    ("山东省", ["济南市", "青岛市", "烟台市"]),
    ("河南省", ["郑州市", "洛阳市"]),
    ("福建省", ["福州市", "厦门市"]),
    ("湖南省", ["长沙市"]),
    ("陕西省", ["西安市"]),
    ("辽宁省", ["沈阳市", "大连市"]),
]
DISTRICTS = words(
    "朝阳区 海淀区 浦东新区 徐汇区 天河区 南山区 福田区 西湖区 余杭区 鼓楼区 武侯区 锦江区 江汉区 "
    "市南区 历下区 金水区 思明区 岳麓区 雁塔区 和平区 滨江区 姑苏区"
)
TOWNS = ["望京街道", "中关村街道", "张江镇", "粤海街道", "五常街道", "城关镇", "长河街道", "湖滨街道"]
ROADS = words(
    "建国路 人民路 中山路 解放路 科技园路 文三路 张江路 南京西路 天府大道 深南大道 长江路 和平街 "
    "东风路 学院路 延安西路 体育西路 淮海中路 黄河大道 青年大街 新华街"
)
COMPLEXES = words(
    "阳光花园 碧桂园 万科城 SOHO现代城 华润大厦 金地广场 世纪公寓 绿城小区 星河苑 创新大厦 保利中心 锦绣家园"
)


def luhn_complete(r: random.Random, prefix: str, n: int) -> str:
    body = prefix + "".join(str(r.randrange(10)) for _ in range(n - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def luhn_broken(r: random.Random, prefix: str, n: int) -> str:
    good = luhn_complete(r, prefix, n)
    return good[:-1] + str((int(good[-1]) + 1 + r.randrange(8)) % 10)


def cn_id(r: random.Random) -> str:
    body = (
        r.choice(ID_REGIONS)
        + f"{r.randrange(1950, 2006)}{r.randrange(1, 13):02d}{r.randrange(1, 29):02d}"
        + f"{r.randrange(1000):03d}"
    )
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


def digits(r: random.Random, n: int, first: str = "0123456789") -> str:
    return r.choice(first) + "".join(str(r.randrange(10)) for _ in range(n - 1))


def cn_mobile(r: random.Random) -> str:
    n = r.choice(MOBILE_PREFIXES) + digits(r, 8)
    style = r.randrange(7)
    if style == 0:
        return f"{n[:3]} {n[3:7]} {n[7:]}"
    if style == 1:
        return f"{n[:3]}-{n[3:7]}-{n[7:]}"
    if style == 2:
        return f"+86 {n[:3]} {n[3:7]} {n[7:]}"
    if style == 3:
        return r.choice(["+86", "0086", "+86-", "(+86)"]) + n
    return n


def cn_landline(r: random.Random) -> str:
    area = r.choice(AREA_CODES)
    local = digits(r, 8 if len(area) == 3 or r.random() < 0.7 else 7, "23456789")
    style = r.randrange(5)
    if style == 0:
        return f"({area}){local}"
    if style == 1:
        return f"{area} {local[:4]} {local[4:]}"
    if style == 2:
        return f"+86 {area[1:]} {local}"
    return f"{area}-{local}"


def bank_card(r: random.Random) -> str:
    kind = r.randrange(4)
    n = (
        luhn_complete(r, r.choice(["622202", "621700", "622848", "621483", "625965"]), r.choice([16, 19]))
        if kind < 2
        else luhn_complete(r, r.choice(["4", "45", "49"]), 16)
        if kind == 2
        else luhn_complete(r, r.choice(["51", "53", "55"]), 16)
    )
    style = r.randrange(3)
    if style == 0:
        return n
    sep = " " if style == 1 else "-"
    return sep.join(n[i : i + 4] for i in range(0, len(n), 4))


def email(r: random.Random) -> str:
    user = r.choice(
        [
            "zhang.wei",
            "lily_chen",
            "jsmith",
            "sarah.connor",
            "wang2019",
            "mike.t",
            "li.na88",
            "h.tanaka",
            "service.team",
            "o.brien",
            "kevin_liu",
            "anna-k",
            "xiaoming.w",
        ]
    )
    dom = r.choice(
        [
            "163.com",
            "qq.com",
            "gmail.com",
            "outlook.com",
            "126.com",
            "yahoo.co.uk",
            "company.cn",
            "mail.example.org",
            "foxmail.com",
            "sina.com",
            "proton.me",
        ]
    )
    return f"{user}{r.choice(['', str(r.randrange(10, 999))])}@{dom}"


def ipv4(r: random.Random) -> str:
    first = r.choice([10, 172, 192, 61, 114, 202, 8, 47, 120, 223])
    return f"{first}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"


def ipv6(r: random.Random) -> str:
    groups = [f"{r.randrange(65536):x}" for _ in range(8)]
    if r.random() < 0.5:
        return ":".join(groups)
    return f"{r.choice(['2001:db8', 'fe80', '2408:8207', '240e:3a1'])}::{groups[5]}:{groups[6]}:{groups[7]}"


def url_credentials(r: random.Random) -> str:
    scheme = r.choice(["https", "ftp", "postgres", "mysql", "redis", "mongodb", "http", "sftp"])
    user = r.choice(["admin", "root", "deploy", "svc_report", "backup", "dev"])
    pw = r.choice(["hunter2", "S3cret!", "p4ssw0rd", "Tr0ub4dor", "qwerty123", "Zx9#kLm2"])
    host = r.choice(["db.internal.example.com", "10.0.3.17", "files.acme.cn", "cache01", "git.corp.local"])
    port = r.choice(["", ":5432", ":21", ":6379", ":8080"])
    return f"{scheme}://{user}:{pw}@{host}{port}{r.choice(['', '/data', '/prod?ssl=true', '/backup/2024'])}"


def passport(r: random.Random, zh: bool) -> tuple[str, bool]:
    """A passport number and whether it is Chinese (recognisable without a cue word)."""
    if zh or r.random() < 0.4:
        return r.choice([f"E{digits(r, 8)}", f"G{digits(r, 8)}", f"E{r.choice('ABCDEFGHJK')}{digits(r, 7)}"]), True
    return r.choice([digits(r, 9, "123456789"), f"{r.choice('KLMNP')}{digits(r, 8)}"]), False


def en_phone(r: random.Random) -> str:
    area = f"{r.randrange(2, 10)}{r.randrange(10)}{r.randrange(10)}"
    ex, line = digits(r, 3, "23456789"), digits(r, 4)
    return r.choice(
        [
            f"({area}) {ex}-{line}",
            f"{area}-{ex}-{line}",
            f"{area}.{ex}.{line}",
            f"+1 {area} {ex} {line}",
            f"+1-{area}-{ex}-{line}",
            f"(555) {ex}-{line}",
            f"+44 20 {digits(r, 4, '3789')} {digits(r, 4)}",
            f"020 {digits(r, 4, '3789')} {digits(r, 4)}",
            f"07{digits(r, 3)} {digits(r, 6)}",
            f"+44 7{digits(r, 3)} {digits(r, 6)}",
            f"+61 2 {digits(r, 4, '89')} {digits(r, 4)}",
            f"+49 30 {digits(r, 8, '2345')}",
            f"+65 {digits(r, 4, '689')} {digits(r, 4)}",
            f"+91 {digits(r, 5, '98')} {digits(r, 5)}",
            f"+33 1 {digits(r, 2)} {digits(r, 2)} {digits(r, 2)} {digits(r, 2)}",
        ]
    )


def cn_name(r: random.Random) -> str:
    return r.choice(CN_SURNAMES) + "".join(r.choice(GIVEN_CHARS) for _ in range(r.choice([1, 2, 2])))


def en_name(r: random.Random, full: bool = True) -> str:
    first = r.choice(EN_FIRST)
    return f"{first} {r.choice(EN_LAST)}" if full else first


def cn_address(r: random.Random) -> str:
    prov, cities = r.choice(PROVINCES)
    parts = []
    if cities is None or r.random() < 0.8:
        parts.append(prov)
    if cities:
        parts.append(r.choice(cities))
    parts.append(r.choice(DISTRICTS))
    if r.random() < 0.25:
        parts.append(r.choice(TOWNS))
    parts.append(r.choice(ROADS) + str(r.randrange(1, 999)) + r.choice(["号", "号", "号", "弄"]))
    tail = r.randrange(5)
    if tail == 1:
        parts.append(r.choice(COMPLEXES))
    elif tail == 2:
        unit = f"{r.randrange(1, 30)}号楼{r.randrange(1, 6)}单元"
        parts.append(f"{r.choice(COMPLEXES)}{unit}{r.randrange(1, 33)}0{r.randrange(1, 9)}")
    elif tail == 3:
        parts.append(f"{r.randrange(1, 30)}栋{r.randrange(1, 33)}0{r.randrange(1, 9)}室")
    elif tail == 4:
        parts.append(f"{r.choice(COMPLEXES)}{r.choice('ABCD')}座{r.randrange(2, 40)}楼")
    return "".join(parts)


# ---------------------------------------------------------------- templates

ZH = [
    "您好，我的手机号是{PHONE}，麻烦尽快联系我",
    "收货人：{PERSON}，电话：{PHONE}，地址：{ADDRESS}",
    "请寄到{ADDRESS}，收件人{PERSON}",
    "骑手{PERSON}态度很差，打了{PHONE}也没人接",
    "快递员{PERSON}送错地方了，包裹放在了隔壁",
    "客服{PERSON}处理得很快，点赞",
    "身份证号{CN_ID}，帮我查一下实名认证为什么没通过",
    "退款请退回到银行卡{BANK_CARD}，户名{PERSON}",
    "有问题发邮件到{EMAIL}，我一般晚上回复",
    "我的邮箱{EMAIL}一直收不到验证码",
    "座机{PHONE}，工作日都有人",
    "服务器{IP}登录异常，请排查",
    "数据库地址 {URL_CREDENTIALS} 被写进了日志里",
    "我的护照号是{PASSPORT}，订机票时一直提示错误",
    "联系人：{PERSON}，{PHONE}",
    "地址改成{ADDRESS}，谢谢",
    "{PERSON}先生您好，您的订单已发货",
    "我是{PERSON}，上周在你们店买的耳机坏了",
    "麻烦转告{PERSON}，明天的会议改到下午",
    "寄件人{PERSON}，身份证{CN_ID}",
    "已绑定信用卡{BANK_CARD}，但是支付失败",
    "家里宽带IP是{IP}，一直连不上",
    "收件地址{ADDRESS}，电话{PHONE}",
    "店长{PERSON}答应退款的，现在不认账了",
    "感谢{PERSON}的耐心解答",
    "住在{ADDRESS}，快递放门卫就行",
]
EN = [
    "Please call me back at {PHONE}, thanks.",
    "My name is {PERSON} and my order never arrived.",
    "Hi, this is {PERSON}; my card {BANK_CARD} was charged twice.",
    "You can reach me at {EMAIL} or {PHONE}.",
    "The driver, {PERSON}, left the parcel in the rain.",
    "Thanks to {PERSON} for sorting out my refund so quickly!",
    "Our server at {IP} keeps dropping connections.",
    "Someone pasted {URL_CREDENTIALS} into the public channel.",
    "My passport number is {PASSPORT}, please update the booking.",
    "Dear {PERSON}, your ticket has been escalated.",
    "Contact {EMAIL} for the invoice copy.",
    "I spoke with {PERSON} yesterday and she promised a callback.",
    "Please send the replacement card to {PERSON}, phone {PHONE}.",
    "Login attempts from {IP} were blocked.",
    "Regards, {PERSON}",
    "{TITLE} {PERSON} from the billing team called me twice.",
    "Text {PHONE} if the courier can't find the door.",
    "Card number {BANK_CARD}, expiry 09/27.",
    "Agent {PERSON} was really helpful.",
    "My email is {EMAIL}, not the old one.",
]
MIXED = [
    "客服{EN_PERSON}很专业，邮箱{EMAIL}",
    "请联系{PERSON}，Tel: {PHONE}",
    "我的英文名是{EN_PERSON}，电话{PHONE}",
    "Shipping to {ADDRESS}, contact {PERSON} {PHONE}",
]
DECOYS_ZH = [
    "这款手机才{PRICE}，性价比很高",
    "{DATE}下单的，{DATE2}才到货",
    "买了{QTY}，味道一般",
    "订单号{ORDER}，什么时候发货？",
    "系统升级到{VERSION}之后就卡顿",
    "{MODEL}用了半年，电池还行",
    "书的ISBN是{ISBN}，印刷质量不错",
    "{TIMESTAMP}下的单，到现在还没发货",
    "快递单号{TRACKING}，显示已签收但我没收到",
    "{CITY}的天气太热了，空调一直开着",
    "坐{TRAIN}回家，车上信号不好",
    "优惠券{COUPON}用不了",
    "温度设置在{TEMP}，噪音很小",
    "第{N}次买了，一如既往的好",
    "客服态度很好，{QTY}很快就到了",
    "股票代码{STOCK}，今天涨停了",
]
DECOYS_EN = [
    "Paid {PRICE_EN} for this and it broke in a week.",
    "Ordered on {DATE_EN}, arrived {DATE}.",
    "Got {QTY_EN}, great value.",
    "Order {ORDER_EN} still shows processing.",
    "Version {VERSION} fixed the crash.",
    "The {MODEL} runs hot under load.",
    "ISBN {ISBN} is the second edition.",
    "Logged at {TIMESTAMP} UTC, no errors.",
    "Tracking {TRACKING} hasn't moved in days.",
    "Flight {FLIGHT} was delayed by 3 hours.",
    "Use code {COUPON} for 20% off.",
    "Build {VERSION} is on the beta channel.",
    "May was a great month for sales, and June even better.",
    "Apple Pay and Amazon Prime both failed at checkout.",
    "The Pro Max model is {PRICE_EN} more than the base one.",
    "Room temperature {TEMP}, battery at 87%.",
]


def decoy_value(r: random.Random, key: str) -> str:
    if key == "PRICE":
        return r.choice(
            [
                f"¥{r.randrange(9, 9999)}.{r.randrange(100):02d}",
                f"{r.randrange(9, 9999)}元",
                f"￥{r.randrange(99, 999)}",
            ]
        )
    if key == "PRICE_EN":
        return r.choice(
            [
                f"${r.randrange(1, 9)},{r.randrange(100, 999)}",
                f"${r.randrange(5, 999)}.{r.randrange(100):02d}",
                f"£{r.randrange(5, 500)}",
                f"€{r.randrange(5, 500)}.99",
            ]
        )
    if key == "DATE":
        return r.choice(
            [
                f"2024-{r.randrange(1, 13):02d}-{r.randrange(1, 29):02d}",
                f"2023年{r.randrange(1, 13)}月{r.randrange(1, 29)}日",
                f"{r.randrange(1, 13)}月{r.randrange(1, 29)}号",
            ]
        )
    if key == "DATE2":
        return f"{r.randrange(1, 13)}月{r.randrange(1, 29)}日"
    if key == "DATE_EN":
        return r.choice(
            [
                f"{r.randrange(1, 13):02d}/{r.randrange(1, 29):02d}/2024",
                f"{r.randrange(1, 29)} March 2024",
                f"March {r.randrange(1, 29)}, 2023",
            ]
        )
    if key == "QTY":
        return r.choice(
            [
                f"{r.randrange(2, 20)}件",
                f"{r.randrange(1, 5)}.{r.randrange(10)}kg",
                f"{r.randrange(1, 9)}00ml",
                f"{r.randrange(2, 50)}包",
                f"{r.randrange(2, 12)}瓶",
            ]
        )
    if key == "QTY_EN":
        return r.choice(
            [
                f"{r.randrange(2, 20)} packs",
                f"{r.randrange(1, 5)}.{r.randrange(10)} kg",
                f"{r.randrange(2, 24)} x 330ml cans",
            ]
        )
    if key in ("ORDER", "ORDER_EN"):
        n = r.choice([16, 18, 19, 12, 20])
        num = luhn_broken(r, "2024" if n > 15 else "", n) if n >= 16 else digits(r, n, "123456789")
        return num if key == "ORDER" else r.choice([f"#{num}", f"{digits(r, 3)}-{digits(r, 7)}-{digits(r, 7)}"])
    if key == "VERSION":
        return r.choice(
            [
                f"v{r.randrange(1, 5)}.{r.randrange(10)}.{r.randrange(10)}",
                f"{r.randrange(1, 15)}.{r.randrange(10)}.{r.randrange(30)}",
                f"iOS 17.{r.randrange(6)}.{r.randrange(3)}",
                f"10.0.{r.randrange(19000, 22631)}.{r.randrange(3000)}",
            ]
        )
    if key == "MODEL":
        return r.choice(
            [
                "iPhone 15 Pro Max",
                "RTX 4090",
                "SM-G9980",
                "Mate 60 Pro",
                "ThinkPad X1 Carbon Gen 11",
                "Model 3",
                "Redmi K70",
                "RX 7900 XTX",
                "Galaxy S24 Ultra",
                "MacBook Air M2",
                "Xiaomi 14",
                "WH-1000XM5",
            ]
        )
    if key == "ISBN":
        return r.choice(
            ["978-7-111-54742-6", "978-0-306-40615-7", "978-7-5086-6780-5", "0-306-40615-2", "9787302423287"]
        )
    if key == "TIMESTAMP":
        return r.choice(
            [
                f"2024-03-{r.randrange(1, 29):02d} {r.randrange(24):02d}:{r.randrange(60):02d}:{r.randrange(60):02d}",
                f"{r.randrange(24):02d}:{r.randrange(60):02d}",
                f"171{digits(r, 7)}",
            ]
        )
    if key == "TRACKING":
        return r.choice([f"SF{digits(r, 13)}", f"YT{digits(r, 13)}", f"1Z{digits(r, 16)}", f"JD{digits(r, 13)}"])
    if key == "CITY":
        return r.choice(["北京", "上海", "广州", "深圳", "杭州", "成都"])
    if key == "TRAIN":
        return r.choice([f"G{r.randrange(1, 9999)}", f"D{r.randrange(1, 999)}", f"K{r.randrange(1, 999)}"])
    if key == "FLIGHT":
        return r.choice([f"CA{r.randrange(100, 9999)}", f"MU{r.randrange(100, 9999)}", f"BA{r.randrange(10, 999)}"])
    if key == "COUPON":
        return r.choice(["SAVE20", "VIP2024", "NEWUSER88", "HAPPY618"])
    if key == "TEMP":
        return r.choice([f"{r.randrange(16, 30)}°C", f"{r.randrange(16, 30)}度"])
    if key == "N":
        return str(r.randrange(2, 30))
    if key == "STOCK":
        return r.choice(["600519", "000001", "300750", "601318"])
    raise KeyError(key)


def fill(r: random.Random, template: str, lang: str) -> dict:
    text, entities = "", []
    for piece in re.split(r"(\{[A-Z_0-9]+\})", template):
        m = re.fullmatch(r"\{([A-Z_0-9]+)\}", piece)
        if not m:
            text += piece
            continue
        key = m.group(1)
        kind, value = key, None
        if key == "PHONE":
            value = (cn_mobile(r) if r.random() < 0.7 else cn_landline(r)) if lang == "zh" else en_phone(r)
        elif key == "PERSON":
            value = cn_name(r) if lang == "zh" else en_name(r, full=r.random() < 0.75)
        elif key == "EN_PERSON":
            kind, value = "PERSON", en_name(r, full=r.random() < 0.5)
        elif key == "TITLE":
            text += r.choice(EN_TITLES)
            continue
        elif key == "PASSPORT":
            value, is_cn = passport(r, lang == "zh")
            if not is_cn and "passport" not in template.lower():
                value = f"E{digits(r, 8)}"
        elif key == "IP":
            value = ipv4(r) if r.random() < 0.7 else ipv6(r)
        else:
            value = {
                "CN_ID": cn_id,
                "BANK_CARD": bank_card,
                "EMAIL": email,
                "URL_CREDENTIALS": url_credentials,
                "ADDRESS": cn_address,
            }.get(key, lambda rr: None)(r)
        if value is None:
            text += decoy_value(r, key)
            continue
        entities.append({"type": kind, "start": len(text), "end": len(text) + len(value)})
        text += value
    return {"text": text, "lang": lang, "entities": entities, "decoy": not entities}


def generated(n_rounds: int = 9) -> list[dict]:
    r = random.Random(SEED)
    rows = []
    for _ in range(n_rounds):
        rows += [fill(r, t, "zh") for t in ZH]
        rows += [fill(r, t, "en") for t in EN]
        for t in MIXED:
            row = fill(r, t.replace("{PERSON}", "{EN_PERSON}") if t.startswith("Shipping") else t, "zh")
            row["lang"] = "mixed"
            rows.append(row)
        rows += [fill(r, t, "zh") for t in r.sample(DECOYS_ZH, 10)]
        rows += [fill(r, t, "en") for t in r.sample(DECOYS_EN, 10)]
    r.shuffle(rows)
    return rows


def from_markup(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        text, entities, pos = "", [], 0
        for m in re.finditer(r"\[\[([A-Z_]+):(.+?)\]\]", line):
            text += line[pos : m.start()]
            entities.append({"type": m.group(1), "start": len(text), "end": len(text) + len(m.group(2))})
            text += m.group(2)
            pos = m.end()
        text += line[pos:]
        lang = "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"
        rows.append({"text": text, "lang": lang, "entities": entities, "decoy": not entities})
    return rows


def write(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    n_ent = sum(len(row["entities"]) for row in rows)
    print(
        f"{path}: {len(rows)} sentences, {n_ent} entities, {sum(row['decoy'] for row in rows)} decoys, "
        f"{path.stat().st_size // 1024} KB",
        file=sys.stderr,
    )


if __name__ == "__main__":
    write(generated(), HERE / "pii_eval.jsonl")
    write(from_markup(HERE / "pii_eval_handwritten.txt"), HERE / "pii_eval_handwritten.jsonl")
