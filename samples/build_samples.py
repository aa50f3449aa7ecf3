"""Build the sample document set: `python samples/build_samples.py`.

Writes `samples/docs/router_manual.pdf`, a short manual for the fictional "Nimbus AX3000" Wi-Fi
router, with headings, a PDF outline (bookmarks) and concrete facts the demo question and tests
rely on (factory reset, admin address, LED meanings...). The output is deterministic: the same
script produces the same bytes, so re-running ingest after `make demo` embeds nothing new.
`samples/docs/faq.csv` (past tickets about the same router) is committed as is.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from fpdf import FPDF

OUT_DIR = Path(__file__).resolve().parent / "docs"
# A fixed date keeps the PDF byte-for-byte reproducible.
FIXED_DATE = datetime(2026, 1, 15, 9, 0, 0, tzinfo=UTC)

# (chapter title, [(section title, [paragraphs])]); one chapter per page.
MANUAL: list[tuple[str, list[tuple[str, list[str]]]]] = [
    ("Getting Started", [
        ("What is in the box", [
            "The Nimbus AX3000 package contains the router, a 12 V / 1.5 A power adapter, a 1.5 m "
            "Ethernet cable (Cat 6) and this quick start manual. Keep the box: the label on its "
            "side repeats the serial number.",
        ]),
        ("Connecting the router", [
            "1. Turn off your modem. 2. Connect the blue WAN port of the router to the modem with "
            "the supplied Ethernet cable. 3. Turn on the modem and wait two minutes. 4. Plug the "
            "power adapter into the router and press the Power button on the back. The power LED "
            "turns solid white when the router has started, which takes about 90 seconds.",
            "Place the router in a central, raised position away from microwave ovens and "
            "cordless phones. Thick walls and metal furniture reduce the Wi-Fi range.",
        ]),
        ("Default network name and password", [
            "The default Wi-Fi network names (SSIDs) are Nimbus-XXXX and Nimbus-XXXX-5G, where "
            "XXXX are the last four characters of the MAC address. The default Wi-Fi password is "
            "printed on the label on the bottom of the router, next to the serial number. The "
            "label also shows a QR code that phones can scan to join the network.",
        ]),
    ]),
    ("Web Admin Console", [
        ("Logging in", [
            "Open a web browser on a device connected to the router and go to the default admin "
            "address http://192.168.8.1 (you can also use http://nimbus.home). On first login "
            "you are asked to create an admin password of at least 10 characters. The admin "
            "password is different from the Wi-Fi password.",
            "If the admin page does not open, check that your device received an address in the "
            "192.168.8.x range, or connect with an Ethernet cable to one of the yellow LAN ports.",
        ]),
        ("Changing the Wi-Fi name and password", [
            "In the admin console open Wireless > Basic Settings. Enter a new network name and a "
            "password of 8 to 63 characters, choose WPA3-Personal (or WPA2/WPA3 mixed mode for "
            "older devices) and click Save. Devices connected to the old network must reconnect "
            "with the new password.",
        ]),
        ("Forgotten admin password", [
            "The admin password cannot be recovered. If you have forgotten it, reset the router to "
            "factory settings (see Troubleshooting and Reset) and set a new one.",
        ]),
    ]),
    ("Firmware Update", [
        ("Automatic updates", [
            "Automatic updates are on by default. The router checks for new firmware every night "
            "between 02:00 and 04:00 and installs it when no device is streaming. You can turn "
            "this off under System > Firmware > Automatic Update.",
        ]),
        ("Updating the firmware manually", [
            "1. Download the latest firmware file (.nfw) for the AX3000 from the Nimbus support "
            "site. 2. Log in to http://192.168.8.1 and open System > Firmware. 3. Click Browse, "
            "select the .nfw file and click Upload. 4. Wait about five minutes while the power LED "
            "blinks white; the router restarts by itself.",
            "Do not turn off the router or unplug it while the firmware is being updated: an "
            "interrupted update can leave the router unable to start.",
        ]),
    ]),
    ("Guest Network and Parental Controls", [
        ("Guest network", [
            "The guest network gives visitors Internet access without access to your own devices. "
            "Turn it on under Wireless > Guest Network, set a name and a password, and optionally "
            "a time limit of 1 to 24 hours after which the guest network turns off by itself. "
            "Guest devices cannot see printers, shared drives or the admin console.",
        ]),
        ("Parental controls", [
            "Parental controls let you create a profile for each family member, assign devices to "
            "it, block categories of websites and set a daily schedule. Open Security > Parental "
            "Controls, click Add Profile, select the devices and choose a filter level (Child, "
            "Teen or Adult). Outside the scheduled hours the devices in the profile have no "
            "Internet access. You can pause the Internet for a profile at any time with Pause.",
        ]),
    ]),
    ("LED Indicators", [
        ("Power LED", [
            "Solid white: the router is working normally. Blinking white: starting up or updating "
            "the firmware. Blinking amber: the router is resetting to factory settings. Solid "
            "amber: the router has a hardware error; contact Nimbus support.",
        ]),
        ("Internet LED", [
            "Solid white: connected to the Internet. Solid red: the WAN cable is connected but "
            "there is no Internet connection; restart your modem. Off: no cable in the WAN port.",
        ]),
        ("Wi-Fi LEDs", [
            "The 2.4G and 5G LEDs are solid white when the band is on and blink when data is "
            "sent. They are off when the band is turned off in the admin console.",
        ]),
    ]),
    ("Troubleshooting and Reset", [
        ("Restarting the router", [
            "Many problems are solved by a restart: press the Power button to turn the router "
            "off, wait 10 seconds and press it again. A restart keeps all your settings.",
        ]),
        ("Factory reset", [
            "A factory reset erases all settings, including the Wi-Fi name, the Wi-Fi password "
            "and the admin password. To reset the router to factory settings, keep the router "
            "turned on, then press and hold the recessed Reset button on the back with a "
            "paperclip for 10 seconds, until the power LED blinks amber. Release the button; the "
            "router restarts with the factory settings in about two minutes. Then log in again "
            "with the default Wi-Fi password from the label.",
        ]),
        ("Technical specifications", [
            "Wi-Fi standard: Wi-Fi 6 (802.11ax), dual band. Speed: up to 574 Mbps on 2.4 GHz and "
            "2402 Mbps on 5 GHz (AX3000 class). Ports: one 2.5 Gbps WAN port, three 1 Gbps LAN "
            "ports, one USB 3.0 port. Processor: 1.3 GHz quad-core. Memory: 512 MB RAM, 128 MB "
            "flash. Power: 12 V / 1.5 A. Dimensions: 230 x 145 x 48 mm. Weight: 410 g. "
            "Operating temperature: 0 to 40 degrees Celsius.",
        ]),
    ]),
]


class _ManualPDF(FPDF):
    def footer(self) -> None:
        self.set_y(-15)
        self.set_font("Helvetica", "", 9)
        self.cell(0, 8, f"Nimbus AX3000 User Manual - page {self.page_no()}", align="C")


def build_manual(path: Path) -> None:
    """Write the router manual PDF to `path`: one chapter per page, with an outline."""
    pdf = _ManualPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title("Nimbus AX3000 Wi-Fi Router - User Manual")
    pdf.set_author("Nimbus Networks (fictional)")
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(True, margin=20)
    for chapter, sections in MANUAL:
        pdf.add_page()
        pdf.start_section(chapter, level=0)
        pdf.set_font("Helvetica", "B", 18)
        pdf.multi_cell(0, 10, chapter, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        for title, paragraphs in sections:
            pdf.start_section(title, level=1)
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", "", 11)
            for text in paragraphs:
                pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
                pdf.ln(2)
            pdf.ln(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))


# A specification table of a fictional TV series, for the table tests and bench/tables.py.
SPEC_ROWS = [["Model", "Screen size", "Power consumption", "Weight"],
             ["QN55Q80", "55 in", "105 W", "17.2 kg"],
             ["QN65Q80", "65 in", "138 W", "25.1 kg"],
             ["QN75Q80", "75 in", "182 W", "34.0 kg"]]


def build_spec_sheet(path: Path, rows: list[list[str]] = SPEC_ROWS) -> Path:
    """Write a one-page specification sheet whose ruled table is drawn column by column.

    Column-major drawing is how some producers write tables, and what makes pypdf's text of one
    a soup ("Model QN55Q80 QN65Q80 ... Weight 17.2 kg 25.1 kg ..."): its text follows the
    content stream. Not part of `samples/docs/` (the demo's documents).
    """
    pdf = FPDF(format="letter")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_font("helvetica", size=11)
    pdf.add_page()
    pdf.multi_cell(0, 7, "Specifications. The table below lists the screen size, power "
                         "consumption and weight of each model of the series.")
    x0, y0, widths, height = pdf.l_margin, pdf.get_y() + 4, [40, 35, 45, 30], 9
    for c in range(len(rows[0])):
        for r, row in enumerate(rows):
            pdf.set_xy(x0 + sum(widths[:c]), y0 + r * height)
            pdf.cell(widths[c], height, row[c], border=1)
    pdf.set_xy(x0, y0 + len(rows) * height + 6)
    pdf.multi_cell(0, 7, "Weights are without the stand. Power consumption is measured in the "
                         "standard picture mode.")
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    """Build the sample documents; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    target = args.out / "router_manual.pdf"
    build_manual(target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
