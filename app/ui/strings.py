"""UI labels in English, Simplified and Traditional Chinese: a gr.I18n for the browser locale, and plain
lookups for the explicit language switch (which must override the browser's choice)."""

from __future__ import annotations

import gradio as gr

from app.ui.samplers import sampler_cost_note
from app.ui.slots import MAX_UI_LORAS, SLOTS, name_field, scale_field

EN: dict[str, str] = {
    "heading": "# Z-Image-Turbo",
    "prompt": "Prompt",
    "prompt_placeholder": "Describe the image (Chinese or English; text in quotes is drawn as written)",
    "negative_prompt": "Negative prompt",
    "negative_info": "Used only when guidance > 0.",
    "guidance": "Guidance (CFG)",
    "guidance_info": "0 = off (Turbo default). Above 0 the negative prompt is used and each step costs twice.",
    "steps": "Steps",
    "steps_info": "Number of transformer calls (8 is the Turbo default).",
    "seed": "Seed",
    "seed_info": "-1 = random",
    "seed_random": "Random seed",
    "seed_reuse": "Reuse last seed",
    "size_class": "Size class",
    "aspect": "Aspect ratio",
    "width": "Width",
    "height": "Height",
    "batch": "Images per run",
    "reference": "Reference image (drag and drop)",
    "strength": "Reference strength",
    "strength_info": "How much the image may change: 1 ignores the reference, small values keep it.",
    "advanced": "Advanced",
    "shift": "Schedule shift",
    "cfg_truncation": "CFG truncation",
    "cfg_normalization": "CFG normalization (0 = off)",
    "sampler": "Sampler",
    "sampler_info": sampler_cost_note("en"),
    "seed_variety": "Seed variety (0 = off)",
    "seed_variety_info": "More different images across seeds: seeded noise on the prompt for the first steps.",
    "control": "Control (ControlNet)",
    "control_help": "A ControlNet Union file from the server's ControlNet folder steers the image by a control map: "
    "edges (canny), lines (lineart, scribble), a grayscale picture (gray), or a map you made elsewhere "
    "(depth, pose, tile: upload it with the mode \"map\"; those need models this server does not run).",
    "controlnet": "ControlNet",
    "controlnet_info": "Files from the server's ControlNet folder; none = no control.",
    "control_image": "Control image",
    "control_preview": "Control map (what the ControlNet sees)",
    "control_mode": "Preprocessor",
    "control_mode_info": "map = use the uploaded image as it is (your own depth or pose map).",
    "control_scale": "Control strength",
    "control_scale_info": "0.75 by default; 0.9 suits the 8-step 2.1 files; 0 = off.",
    "inpaint": "Inpaint (repaint part of the reference)",
    "inpaint_help": "Upload the reference image above, then paint over the area to repaint. "
    "Only the painted area changes; with reference strength 1 it is generated anew from the prompt. "
    "The mask is made from your strokes when you click Generate.",
    "mask_editor": "Paint the area to repaint",
    "mask": "Mask used (white = repainted)",
    "loras": "LoRA",
    "loras_info": "Up to {slots} LoRA files from the server's LoRA folder, each with its own strength "
    "(1 = as trained, 0 = off, negative = the opposite). Empty slots are ignored.".format(slots=MAX_UI_LORAS),
    **{name_field(slot): f"LoRA {slot}" for slot in SLOTS},
    **{scale_field(slot): f"LoRA {slot} strength" for slot in SLOTS},
    "generate": "Generate",
    "stop": "Stop",
    "recipe_drop": "Drop a PNG made here to restore its settings",
    "status": "Status",
    "gallery": "Results",
    "details": "Details (seeds, timings)",
    "history": "History (the output folder, newest first; click an image to choose it)",
    "history_newer": "◀ Newer",
    "history_older": "Older ▶",
    "history_refresh": "Refresh",
    "history_restore": "Restore its settings",
    "history_reference": "Use as reference image",
    "history_delete": "Delete",
    "history_recipe": "Recipe of the chosen image",
    "history_page": "Page {page}/{pages} · {total} images",
    "export": "Export API code",
    "export_source": "Code for",
    "export_button": "Show code",
    "code_python": "Python (gradio_client)",
    "code_curl_gradio": "curl (two-step Gradio call)",
    "code_curl_rest": "curl (REST endpoint)",
    "code_openai": "Python (openai SDK)",
    "tokens": "Tokens: {count} / {limit}",
    "tokens_over": "Tokens: {count} / {limit} (too long)",
    "tokens_unknown": "Tokens: - (model not loaded)",
    "loading_banner": "⏳ The model is loading and warming up; generation starts when it is ready.",
}

ZH_CN: dict[str, str] = {
    "heading": "# Z-Image-Turbo 图像生成",
    "prompt": "提示词",
    "prompt_placeholder": "描述想要的图像（中文或英文；引号中的文字会按原样画出）",
    "negative_prompt": "反向提示词",
    "negative_info": "仅在引导系数 > 0 时使用。",
    "guidance": "引导系数 (CFG)",
    "guidance_info": "0 = 关闭（Turbo 默认）。大于 0 时使用反向提示词，每一步的计算量翻倍。",
    "steps": "步数",
    "steps_info": "Transformer 调用次数（Turbo 默认 8）。",
    "seed": "种子",
    "seed_info": "-1 = 随机",
    "seed_random": "随机种子",
    "seed_reuse": "沿用上次种子",
    "size_class": "尺寸档位",
    "aspect": "宽高比",
    "width": "宽度",
    "height": "高度",
    "batch": "每次生成张数",
    "reference": "参考图（可拖放）",
    "strength": "参考强度",
    "strength_info": "允许改变的程度：1 忽略参考图，数值越小越接近参考图。",
    "advanced": "高级选项",
    "shift": "调度偏移 (shift)",
    "cfg_truncation": "CFG 截断",
    "cfg_normalization": "CFG 归一化（0 = 关闭）",
    "sampler": "采样器",
    "sampler_info": sampler_cost_note("zh"),
    "seed_variety": "种子多样性（0 = 关闭）",
    "seed_variety_info": "让不同种子的图像差别更大：前几步给提示词加入按种子生成的噪声。",
    "control": "控制（ControlNet）",
    "control_help": "用服务器 ControlNet 文件夹中的 ControlNet Union 文件，按控制图引导构图：边缘（canny）、线条（lineart、"
    "scribble）、灰度图（gray），或在别处制作好的控制图（深度、姿态、tile：选择模式 \"map\" 上传；这些需要本服务器没有运行的模型）。",
    "controlnet": "ControlNet",
    "controlnet_info": "来自服务器 ControlNet 文件夹的文件；无 = 不使用控制。",
    "control_image": "控制图",
    "control_preview": "控制图预处理结果（ControlNet 看到的图）",
    "control_mode": "预处理",
    "control_mode_info": "map = 按上传的原样使用（自己制作的深度图或姿态图）。",
    "control_scale": "控制强度",
    "control_scale_info": "默认 0.75；8 步的 2.1 文件适合 0.9；0 = 关闭。",
    "inpaint": "局部重绘（重绘参考图的一部分）",
    "inpaint_help": "先在上方上传参考图，再涂抹需要重绘的区域。只有涂抹的区域会改变；参考强度为 1 时该区域按提示词重新生成。"
    "点击“生成”时由涂抹区域生成蒙版。",
    "mask_editor": "涂抹需要重绘的区域",
    "mask": "使用的蒙版（白色 = 重绘）",
    "loras": "LoRA",
    "loras_info": "最多 {slots} 个来自服务器 LoRA 文件夹的 LoRA，各有自己的强度"
    "（1 = 训练时的效果，0 = 关闭，负值 = 反向）。空位置会被忽略。".format(slots=MAX_UI_LORAS),
    **{name_field(slot): f"LoRA {slot}" for slot in SLOTS},
    **{scale_field(slot): f"LoRA {slot} 强度" for slot in SLOTS},
    "generate": "生成",
    "stop": "停止",
    "recipe_drop": "拖入本站生成的 PNG 以恢复其参数",
    "status": "状态",
    "gallery": "结果",
    "details": "详情（种子、耗时）",
    "history": "历史（输出文件夹，最新在前；点击图片选中）",
    "history_newer": "◀ 较新",
    "history_older": "较旧 ▶",
    "history_refresh": "刷新",
    "history_restore": "恢复其参数",
    "history_reference": "用作参考图",
    "history_delete": "删除",
    "history_recipe": "所选图片的生成参数",
    "history_page": "第 {page}/{pages} 页 · 共 {total} 张",
    "export": "导出 API 代码",
    "export_source": "代码对应",
    "export_button": "显示代码",
    "code_python": "Python（gradio_client）",
    "code_curl_gradio": "curl（Gradio 两步调用）",
    "code_curl_rest": "curl（REST 接口）",
    "code_openai": "Python（openai SDK）",
    "tokens": "Token 数：{count} / {limit}",
    "tokens_over": "Token 数：{count} / {limit}（过长）",
    "tokens_unknown": "Token 数：-（模型未加载）",
    "loading_banner": "⏳ 模型正在加载和预热，就绪后即可生成。",
}

# Traditional Chinese: the few characters that differ from the Simplified strings.
_TRADITIONAL = str.maketrans(
    "图词态数种随机档宽张参级选项调断归关闭强复详时历标签页导码对应单显两过长载预热绪后语变仅计认画样号会从请该"
    "个来务夹训练负构边缘线条择传这没运涂绘区为别处动",
    "圖詞態數種隨機檔寬張參級選項調斷歸關閉強復詳時歷標籤頁導碼對應單顯兩過長載預熱緒後語變僅計認畫樣號會從請該"
    "個來務夾訓練負構邊緣線條擇傳這沒運塗繪區為別處動",
)
ZH_TW: dict[str, str] = {key: value.translate(_TRADITIONAL) for key, value in ZH_CN.items()}

TABLES = {"en": EN, "zh": ZH_CN}


def build_i18n() -> gr.I18n:
    """Gradio translations: the frontend picks the table that matches the browser locale."""
    return gr.I18n(en=EN, **{"zh-CN": ZH_CN, "zh-TW": ZH_TW, "zh": ZH_CN})


def ui_text(key: str, lang: str, **params: object) -> str:
    """A UI string in "en" or "zh" (used when the explicit switch overrides the browser locale)."""
    return TABLES.get(lang, EN)[key].format(**params)
