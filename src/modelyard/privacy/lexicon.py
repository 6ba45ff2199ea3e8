"""Word lists of the name and address recognizers: surnames, cue words, provinces, English first names.

The Chinese lists are short and written out here. First and last names for English text come from the name lists
that Faker ships (``faker.providers.person.<locale>``: English-speaking locales plus the Latin-script lists of
common origins of customers' names, about ten thousand first names): Faker is a maintained, pure-Python package
that needs nothing at run time, while the alternatives are downloads (nltk's names corpus, spaCy's NER models).
Only the lists are read — Faker itself is never instantiated here. Chinese given-name characters are a hand-picked
set plus those of Faker's Chinese given names.
"""

from __future__ import annotations

import functools
import importlib


def _words(text: str) -> list[str]:
    """The space-separated words of ``text`` (the lists below are written as one string each)."""
    return text.split()


def phrases(text: str) -> tuple[str, ...]:
    """Like :func:`_words`, with ``_`` standing for a space inside a phrase (``my_name_is``)."""
    return tuple(w.replace("_", " ") for w in text.split())


# The most common Chinese surnames (about 90% of the population), single then compound.
CN_SURNAMES = frozenset(
    _words(
        "王 李 张 刘 陈 杨 黄 赵 吴 周 徐 孙 马 朱 胡 郭 何 高 林 罗 郑 梁 谢 宋 唐 许 韩 "
        "冯 邓 曹 彭 曾 肖 田 董 袁 潘 于 蒋 蔡 余 杜 叶 程 苏 魏 吕 丁 任 沈 姚 卢 姜 崔 "
        "钟 谭 陆 汪 范 金 石 廖 贾 夏 韦 付 方 白 邹 孟 熊 秦 邱 江 尹 薛 闫 段 雷 侯 龙 "
        "史 陶 黎 贺 顾 毛 郝 龚 邵 万 钱 严 覃 武 戴 莫 孔 向 汤 常 温 康 施 文 牛 樊 葛 "
        "邢 安 齐 易 乔 伍 庞 颜 倪 庄 聂 章 鲁 岳 翟 殷 詹 申 欧 耿 关 兰 焦 俞 左 柳 甘 "
        "祝 包 宁 尚 符 舒 阮 柯 纪 梅 童 凌 毕 单 季 裴 霍 涂 成 苗 谷 盛 曲 翁 冉 骆 蓝 "
        "路 游 辛 靳 管 柴 蒙 鲍 华 喻 祁 蒲 房 滕 屈 饶 解 牟 艾 尤 阳 时 穆 农 司 卓 古 "
        "吉 缪 简 车 项 连 芦 麦 褚 娄 窦 戚 岑 景 党 宫 费 卜 冷 晏 席 卫 米 柏 宗 瞿 桂 "
        "全 佟 应 臧 闵 苟 邬 边 卞 姬 师 和 仇 栾 隋 商 刁 沙 荣 巫 寇 桑 郎 甄 丛 仲 虞 "
        "敖 巩 明 佘 池 查 麻 苑 迟 邝 官 封 谈 匡 鞠 惠 荆 乐 冀 郁 胥 南 班 储 原 栗 燕 "
        "楚 鄢 劳 谌 奚 皮 粟 冼 蔺 楼 盘 满 闻 位 厉 伊 仝 区 郜 海 阚 花 权 强 帅 屠 豆 "
        "朴 盖 练 廉 禹 井 祖 漆 巴 丰 支 卿 国 狄 平 计 索 宣 晋 相 初 门 云 容 敬 来 扈 "
        "晁 芮 都 普 阙 浦 戈 伏 鹿 薄 邸 雍 辜 羊 阿 乌 母 裘 亓 修 邰 赫 杭 况 那 宿 鲜 "
        "印 逯 隆 茹 诸 战 慕 危 玉 银 亢 嵇 公 哈 湛 宾 戎 勾 茅 利 於 呼 居 揭 干 但 尉 "
        "冶 斯 元 束 檀 衣 信 展 阴 昝 智 幸 奉 植 衡 富 尧 闭 由 萧 蓟 逄 郦 缑 笪 訾 蔚 "
        "钮 殳 邴 虢"
    )
)
CN_COMPOUND_SURNAMES = frozenset(
    _words(
        "欧阳 司马 上官 诸葛 东方 皇甫 尉迟 公孙 慕容 长孙 宇文 司徒 夏侯 轩辕 令狐 钟离 端木 西门 "
        "南宫 独孤 百里 呼延 万俟"
    )
)
# Surnames common enough that a word jieba tags as a person name (nr) counts without any cue word.
CN_COMMON_SURNAMES = CN_COMPOUND_SURNAMES | frozenset(
    _words(
        "王 李 张 刘 陈 杨 黄 赵 吴 周 徐 孙 马 朱 胡 郭 何 林 罗 郑 梁 谢 宋 唐 许 韩 冯 "
        "邓 曹 彭 曾 肖 田 董 袁 潘 蒋 蔡 余 杜 程 苏 魏 吕 丁 任 沈 姚 卢 姜 崔 钟 谭 陆 "
        "汪 范 廖 贾 夏 韦 邹 孟 熊 秦 邱 尹 薛 闫 段 侯 史 陶 黎 贺 顾 郝 龚 邵 钱 万 关 "
        "萧 严 覃 戴 莫 孔 汤 温 康 施 牛 樊 葛 邢 倪 庄 聂 俞 柳 祝 欧 詹 耿"
    )
)

# Characters common in given names (hand-picked): a word tagged as a name, or the characters after a surname, must
# be made of these to count (陈旧 "old", 顾客 "customer" and 蓝屏 "blue screen" are tagged nr by jieba too).
CN_GIVEN_CHARS = frozenset(
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建文辉力宇浩然晓燕子涵梓轩思雨佳怡欣妍嘉俊鹏志国海波"
    "晨阳雪梅婷琳颖倩斌飞鑫博彬凯昊林峰琴蕾亮欢莉凤慧宏东成德福荣新春云兵珍祥龙金美宁琪瑶璐薇悦蓉洁丹鹤雯霖睿泽瑞"
    "铭航昕哲翔彤馨璇琦菲蒙淑贞凡帆旭宸逸辰诗语可心一依若安乐天星月露清源松柏山川江河冰秋冬夏虹彩丰盛兴旺贵富宝珠"
    "光耀煌豪威武雄毅坚健康寿长永恒昌顺利发达远立学智聪贤良善仁义礼信忠孝诚和泰定宜雅婉娴娇媛嫣姗婕妮娅姿琼瑾瑜璋"
    "珊琛瑛玲环翠碧青紫朱霏霄雷曦晖昭朗晴晶炎焱煜灿烨熙焕炜烁锋钢锐钧银镇锦洪泉润沛淼瀚渊森杉桐楠桦柳杨竹菊莲荷芝"
    "芸芬芹苗茜萱莹菁茂莎叶花庆卫壮皓鸿鸣鸥鹃雁骏驰腾跃麟孟仲季伯叔小大少念忆梦喜笑爱意情书画歌舞韵墨笛瑗璞才彦士"
    "君民生友朋宾晗兆奇振宗伦维卿则刘胜承嵩岚岩峻崇巍屹昱暄晟晔冉苒茹菡蓓蔚璟琬瑄瑷珺琰珏琨祺禧祯禄寅申辛亦奕弈珂"
    "苏童泓浚澄澜湘漫潇沁滢淇淳深湛凌南北西中正方圆诺言尧舜禹汤汉唐宋元勤俭朴素真纯怀"
)
# Words jieba's dictionary tags as person names (nr) that are everyday words in reviews and chats.
CN_NOT_NAMES = frozenset(
    _words(
        "明白 文明 阳光 卫星 雷达 荣誉 古老 陆军 道德 王朝 和尚 武功 小姐 师傅 叶子 高兴 高手 高达 "
        "高端 高清 黄金 金牌 金额 马上 马路 马桶 王者 方便 方法 方向 方面 常常 常用 安全 安装 安静 "
        "华为 江湖 石头 白色 白天 钱包 曾经 周末 周到 周边 周年 余额 任何 任务 连续 连接 向上 时间 "
        "时候 司机 成本 成功 成都 关于 关注 宁可 包装 包邮 单位 毕竟 管理 简单 车主 车子 全部 全新 "
        "应该 应用 边框 商品 商家 和平 和谐 沙发 荣耀 郎平 甄别 明天 明显 明确 海鲜 海外 花钱 花呗 "
        "强大 平台 平安 计划 国家 国产 云端 容易 都是 普通 印象 元素 信息 展示 智能 幸亏 幸福 富有 "
        "龙头 邱比特 万豪 温泉 马马虎虎 王府井 关怀 钟爱 韩文 文青 熊宝宝 姜汤 乌托邦 谢谢 方式 方案 "
        "方位 林业 宋体 黄色 黄瓜 蓝色 蓝牙 白菜 朱红 项目 车辆 段落 雷电 施工 凌晨 包括 温度 温馨 "
        "温柔 康复 乐意 欧元 胡说 孔雀"
    )
)

# Context cues: a person's name follows these words (联系人：王小明, 骑手李建国, contact John).
CN_NAME_CUES = tuple(
    _words(
        "联系人 收件人 收货人 寄件人 发件人 签收人 取件人 负责人 经办人 持卡人 投保人 被保险人 骑手 "
        "快递员 快递小哥 配送员 送货员 外卖员 司机 师傅 客服 专员 顾问 店长 店主 老板 经理 主管 销售 "
        "导购 售后 技术员 维修工 工程师 医生 护士 老师 班主任 律师 房东 中介 保安 前台 管家 同事 姓名 "
        "名字 我叫 我是 叫做 本人 用户 客户 患者 学生 乘客 车主 业主 住户 买家 卖家 朋友 同学 男友 "
        "女友 老公 老婆 户名 开户名 账户名 开户人 联系 转告 告诉 通知 感谢 谢谢 麻烦 找 请问 交给 "
        "转交 致 署名 签名 代收"
    )
)
# Cues that label a field ("收件人，王伟" / "姓名: 王伟"): a comma may stand between them and the name.
CN_NAME_LABELS = tuple(
    _words("联系人 收件人 收货人 寄件人 发件人 签收人 取件人 负责人 经办人 持卡人 姓名 户名 开户名 账户名 署名 签名")
)
# A surname followed by one of these is a person (王先生, 李女士, 张经理, 刘师傅).
CN_NAME_SUFFIXES = tuple(
    _words(
        "先生 女士 小姐 老师 师傅 经理 总监 主任 医生 大夫 护士 律师 阿姨 叔叔 大爷 奶奶 大姐 大哥 "
        "姐姐 同学 总 教授 博士 警官"
    )
)

# Province-level divisions (short and full names), the first part of a postal address.
CN_PROVINCES = tuple(
    _words(
        "北京市 天津市 上海市 重庆市 北京 天津 上海 重庆 内蒙古自治区 广西壮族自治区 西藏自治区 "
        "宁夏回族自治区 新疆维吾尔自治区 香港特别行政区 澳门特别行政区 内蒙古 广西 西藏 宁夏 新疆 香港 澳门 "
        "河北省 山西省 辽宁省 吉林省 黑龙江省 江苏省 浙江省 安徽省 福建省 江西省 山东省 河南省 湖北省 "
        "湖南省 广东省 海南省 四川省 贵州省 云南省 陕西省 甘肃省 青海省 台湾省 河北 山西 辽宁 吉林 "
        "黑龙江 江苏 浙江 安徽 福建 江西 山东 河南 湖北 湖南 广东 海南 四川 贵州 云南 陕西 甘肃 青海 "
        "台湾"
    )
)
# Words before an address ("寄到…", "地址：…") — an address may start right after one.
CN_ADDRESS_CUES = tuple(_words("地址 住址 寄到 寄往 送到 送至 寄至 发到 发往 邮寄到 住在 家住 位于 搬到 来自"))

# English
EN_TITLES = tuple(_words("Mr Mrs Ms Miss Mx Dr Prof Professor Sir Dame Madam Mister Lady Lord"))
# Phrases after which a capitalised word is a name (lower-cased; matched as whole words). Strong cues take any
# capitalised word; role cues take an unlisted word unless it is an everyday word; weak cues only listed first names.
EN_STRONG_CUES = phrases(
    "my_name_is name_is name's call_me dear regards sincerely signed name: contact: attn attn: yours_truly "
    "best_wishes mr mrs ms"
)
EN_ROLE_CUES = phrases(
    "this_is i_am i'm ask_for asked_for speak_to speak_with spoke_to spoke_with talked_to talk_to talking_to "
    "named called contact agent rep representative driver courier technician tech manager cashier waiter "
    "waitress host landlord tenant doctor nurse teacher assistant colleague friend husband wife son daughter "
    "patient recipient sender engineer supervisor officer guy lady deliver_to delivered_to ship_to shipped_to "
    "addressed_to helped_by served_by partner boss neighbor neighbour customer client owner buyer seller"
)
EN_WEAK_CUES = phrases(
    "from by with and cc to for ask tell told met emailed called hi hello hey thanks thank_you thanks_to cheers best"
)
EN_NAME_CUES = EN_STRONG_CUES + EN_ROLE_CUES + EN_WEAK_CUES
# Listed first names that are also everyday words, places or brands: a name only with a surname or a cue.
EN_AMBIGUOUS_FIRST = frozenset(
    _words(
        "Ace Admiral Alpha Amber America Angel April Archer Art Asia August Aura Aurora Autumn Baby Baker "
        "Banks Baron Bay Bell Berry Best Bill Bird Bishop Blaze Bliss Blossom Bob Boss Brain Branch Brook "
        "Brown Buck Bud Buddy Butler Cadence Captain Cash Chance Charity Chase Cherry China Chip Christian "
        "Christmas Clay Cliff Colonel Comfort Coral Council Crystal Daisy Dale Dawn Deacon Destiny Diamond "
        "Doctor Doll Dove Drew Duke Early Earnest Easter Echo Eden Elder Ever Faith Fancy Fate Felicity Fern "
        "Fisher Flint Flora Forest Frank Friend Gale Garland General Genesis Ginger Glen Golden Governor "
        "Grace Gray Green Grey Grove Guy Hall Handy Harmony Haven Hazel Heath Heather Heaven Hill Holly Honey "
        "Hope Hunter Infant Iris Ivory Ivy Jack Jade Jewel Journey Joy Judge June Junior Justice King Lady "
        "Lance Lark Lavender Lawyer Lemon Liberty Lily Link Little Long Love Lucky Major Male Mark Marsh "
        "Mason Max May Meadow Melody Mercy Miles Miner Miracle Misty Nick North Nova Olive Opal Orange Page "
        "Pat Patience Peace Pearl Penny Pepper Pink Piper Pleasant Poppy Porter Precious Press Price Prime "
        "Prince Princess Queen Rain Raven Ray Reason Red Reed Rich River Robin Rock Rose Ruby Rush Rusty Sage "
        "Saint Sandy Scarlet Serenity Shade Silver Sincere Sky Spring Squire Star Sterling Stone Storm Summer "
        "Sunday Sunny Sunshine Tiny Treasure Trinity True Unique Unknown Unnamed Velvet Victory Violet Walker "
        "Ward Wells West Will Willow Windy Winter Wolf Wood Worth Young Alabama Arizona Austin Berlin Boston "
        "Bristol Brooklyn Camden Carolina Chelsea Cuba Dallas Denver Florence Florida Georgia Houston India "
        "Indiana Ireland Jordan Kenya Lincoln London Madison Manila Melbourne Memphis Milan Montana Nevada "
        "Orlando Paris Phoenix Rome Sydney Texas Venice Victoria Vienna Virginia Washington Mercedes Porsche "
        "Lexus Tesla Apple Amazon Nike Dell Ford Jaguar Harley Kindle Alexa Siri Galaxy Pixel Xbox Luna Hero "
        "Legend Marvel Story Prosper Sable Sol Sonny Son Mac Don Dean Lee Sue Gene Neil Norman Lane Cole "
        "Miller Carter Taylor Parker Cooper Tucker"
    )
)
# Capitalised words that never end a name ("Pro Max", "Customer Service", "New York").
EN_NOT_SURNAMES = frozenset(
    _words(
        "Pro Max Plus Mini Ultra Air Street St Road Rd Avenue Ave Lane Drive Service Support Team Store Shop "
        "Inc Ltd LLC Co Company Corp Airlines Airways Bank Hotel University College School Hospital Center "
        "Centre City County State Park Mall Market Prime Edition Series Version Model Day Week Month Year "
        "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July "
        "August September October November December Thanks Thank Hi Hello Dear The A An And Or But I We You "
        "He She They It This That My Our Your Order Account Card Phone Email Please Yes No OK Okay Great Good "
        "Bad Very Not"
    )
)
# English-speaking locales, plus the Latin-script lists of the languages customers' names most often come from
# (romanised Japanese and Chinese given names included), so "Aoife", "Tomás" or "Hiroshi" count as first names.
_EN_LOCALES = tuple(
    _words(
        "en_US en_GB en_IE en_NZ en_IN en_PK en_KE en_NG ga_IE fr_FR es_ES de_DE it_IT pt_PT pt_BR nl_NL pl_PL ja_JP "
        "zh_CN ko_KR vi_VN"
    )
)


@functools.lru_cache(maxsize=1)
def cn_given_chars() -> frozenset[str]:
    """:data:`CN_GIVEN_CHARS` plus the characters of Faker's Chinese given names (mainland and Taiwan lists)."""
    chars = set(CN_GIVEN_CHARS)
    for locale in ("zh_CN", "zh_TW"):
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except ImportError:  # pragma: no cover - Faker is a dependency
            continue
        for name in vars(provider).get("first_names") or ():
            chars.update(c for c in name if "\u4e00" <= c <= "\u9fff")
    return frozenset(chars)


@functools.lru_cache(maxsize=1)
def english_names() -> tuple[frozenset[str], frozenset[str]]:
    """``(first names, last names)`` of Faker's English locales (see the module docstring)."""
    first: set[str] = set()
    last: set[str] = set()
    for locale in _EN_LOCALES:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except ImportError:  # pragma: no cover - Faker is a dependency; a trimmed install keeps the cue rules
            continue
        own = vars(provider)
        for attr in ("first_names", "first_names_male", "first_names_female", "first_romanized_names"):
            first.update(n for n in own.get(attr) or () if isinstance(n, str))
        for attr in ("last_names", "last_romanized_names"):
            last.update(n for n in own.get(attr) or () if isinstance(n, str))
    first = {n for n in first if n.isalpha() and n[:1].isupper() and n[1:].islower() and len(n) > 1}
    last = {n for n in last if n.replace("'", "").replace("-", "").isalpha() and n[:1].isupper() and len(n) > 1}
    return frozenset(first), frozenset(last)
